"""`python -m consentmatch`: the same command as `consentmatch`."""

from .cli import main

if __name__ == "__main__":
    main()
