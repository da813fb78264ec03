"""``python -m selfsup_pcd.render [overrides]``: render a dataset into the render cache (see ``cli.py``)."""

from selfsup_pcd.render.cli import main

if __name__ == "__main__":
    main()
