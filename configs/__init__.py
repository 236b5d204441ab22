"""clfw's YAML configs, installed as the package data of ``clfw.configs``.

On the command line a packaged file is named ``clfw:<path under configs/>``, e.g. ``clfw fit --config
clfw:quickstart.yaml``; ``clfw configs list`` lists them and ``clfw configs copy DEST`` copies them into ``DEST``.
"""
