"""Publish a trained model as a self-contained Hub release (test metrics, catalog, card, checks): `python release.py --help`.

The same command as `fusionrec-release`; the code is fusionrec/release.py.
"""

import sys

from fusionrec.release import main

if __name__ == "__main__":
    sys.exit(main())
