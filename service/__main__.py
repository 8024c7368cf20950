"""`python -m service ...`: the command line (see `python -m service --help`)."""

from gevent import monkey

if not monkey.is_module_patched("socket"):
    monkey.patch_all()

from service.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
