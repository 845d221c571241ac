"""Every movie's and every user's vector (float16) with ids and titles: `python export_embeddings.py --help`.

The same command as `fusionrec-export`; the code is fusionrec/export.py.
"""

import sys

from fusionrec.export import main

if __name__ == "__main__":
    sys.exit(main())
