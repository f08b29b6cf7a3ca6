import sys

from model.data.preview import main

sys.exit(main())
