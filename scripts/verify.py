"""Check that every trainer computes the same gradients and loss curve (backproplab/verify.py; what it measures:
backproplab/equivalence.py).

    python scripts/verify.py [--steps 500] [--seed 0] [--model sequential] [--bias both] [overrides...]
"""

from backproplab.verify import main

if __name__ == "__main__":
    raise SystemExit(main())
