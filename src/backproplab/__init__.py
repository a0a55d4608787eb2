"""backproplab: the nine examples of "Learning PyTorch with Examples" as one tracked pipeline."""
