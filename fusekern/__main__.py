import sys

from fusekern.cli import main

sys.exit(main())
