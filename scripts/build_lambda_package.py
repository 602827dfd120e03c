"""Build the Lambda deployment package of the pipeline functions (and, on demand, its layer).

    python scripts/build_lambda_package.py            # build/lambda/functions.zip
    python scripts/build_lambda_package.py --layer    # also build/lambda/layer.zip

A thin wrapper over :mod:`mlaas4hep.local.lambda_package`.
"""

import sys

from mlaas4hep.local.lambda_package import main

if __name__ == "__main__":
    sys.exit(main())
