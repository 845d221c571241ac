"""Train a FusionModel on a prepared dataset with 🤗 Accelerate: one loop for CPU, one GPU and many.

    accelerate launch train_accelerate.py --dataset data/prepared/synthetic --output-dir outputs/demo

The same command as `fusionrec-train`; the code is fusionrec/training/ (`--help` lists every option).
"""

import sys

from fusionrec.training.loop import main

if __name__ == "__main__":
    sys.exit(main())
