"""Full-ranking evaluation of a fusionrec model on a prepared dataset: `python evaluate_fusionrec.py --help`.

The same command as `fusionrec-evaluate`; the code is fusionrec/evaluation.py.
"""

import sys

from fusionrec.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
