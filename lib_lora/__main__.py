import sys

from lib_lora.cli import main

if __name__ == "__main__":
    sys.exit(main())
