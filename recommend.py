"""Top-K movie recommendations for a dataset user or a typed history: `python recommend.py --help`.

The same command as `fusionrec-recommend`; the code is fusionrec/recommend.py.
"""

import sys

from fusionrec.recommend import main

if __name__ == "__main__":
    sys.exit(main())
