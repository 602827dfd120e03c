"""What the service and its clients agree on: media types, the default alias, and the
URL schemes ``/predict_file`` reads.

Kept free of heavy imports, so that the client (and the CLI) can use them without
loading numpy, pyarrow or the model code.
"""

from __future__ import annotations

JSON = "application/json"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
ARROW_FILE = "application/vnd.apache.arrow.file"
PARQUET = "application/vnd.apache.parquet"
OCTET_STREAM = "application/octet-stream"

#: The alias the service serves and retraining promotes, unless told otherwise.
DEFAULT_ALIAS = "production"

#: The schemes of the URLs ``POST /predict_file`` reads itself (a client uploads the rest).
FILE_URL_SCHEMES = ("s3", "root", "https", "http")
