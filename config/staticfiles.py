"""Static files storage: whitenoise's compressed (gzip + brotli), content-hashed manifest storage.

``collectstatic`` writes ``viewer.<hash>.js`` with ``.gz``/``.br`` siblings and a manifest; whitenoise
then serves the hashed names with ``Cache-Control: max-age=315360000, immutable`` and the compressed
copy the browser accepts, so the 2.3 MB viewer bundle travels once, as ~0.6 MB.

Without a manifest (tests, ``runserver`` before ``collectstatic``) ``{% static %}`` falls back to the
plain name, which ``WHITENOISE_USE_FINDERS`` serves straight from the app and frontend folders, instead
of failing the page with "Missing staticfiles manifest entry".
"""
from __future__ import annotations

from whitenoise.storage import CompressedManifestStaticFilesStorage


class ManifestStaticFilesStorage(CompressedManifestStaticFilesStorage):
    manifest_strict = False

    def stored_name(self, name: str) -> str:
        try:
            return super().stored_name(name)
        except ValueError:  # not collected yet: the finders serve the unhashed file
            return name
