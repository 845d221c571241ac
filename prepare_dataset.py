"""Raw movie files -> a prepared fusionrec dataset folder: `python prepare_dataset.py --help`.

The same command as `fusionrec-prepare`; the code is fusionrec/data/prepare.py.
"""

import sys

from fusionrec.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())
