"""The experiment scripts, one module per paper result, run by the ``diffalign`` command.

Their source is the repository's top-level ``experiments/`` folder. The wheel ships those files
here, under the package's own namespace, so that installing diffalign never puts a top-level
module named ``experiments`` into site-packages; in a source checkout (an editable install) that
folder is added to this package's search path instead.
"""

import os as _os

_checkout = _os.path.join(_os.path.dirname(__file__), _os.pardir, _os.pardir, "experiments")
if _os.path.isfile(_os.path.join(_checkout, "toy2d.py")) and not _os.path.isfile(
    _os.path.join(_os.path.dirname(__file__), "toy2d.py")
):
    __path__.append(_os.path.abspath(_checkout))  # noqa: F821 (a package's __path__)
