import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# Load every view (the URLconf: the results pages bring pandas, scipy and matplotlib) and the reading
# viewer's helpers now, when a gunicorn worker boots (or once in the master with --preload), not
# during the first request each worker serves: that request took 1-2 s more (a physician's first
# case). Management commands and Celery workers do not import this module.
from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns  # noqa: B018  (imports config.urls and every view module)
import apps.quantification.viewer  # noqa: E402, F401
import ml.io.nifti  # noqa: E402, F401  (nibabel: the viewer reads stored volumes on a cache miss)
