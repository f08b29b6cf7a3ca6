import sys

from model.data.datasets import main

sys.exit(main())
