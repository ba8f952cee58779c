"""Programs that run inside the Ray pods, shipped as text in the ConfigMap `<name>-ray` (mounted at /etc/rayop).

Guarantees:
- Each file is a standalone program for the user's stock Ray image: Python's standard library and `ray` only
  (not the `kubernetes` package, not rayop). They import each other by plain module name (the mount is on the
  Python path), never through this package.
- The operator never imports them; `rayop.autoscaler.inpod_files()` reads them as text.
"""
