"""The local stack: every server of the service on one machine, for tests and the demo.

Managed local servers (:mod:`.processes`; XRootD :mod:`.xrootd`, moto :mod:`.moto`,
``bentoml serve`` :mod:`.bento`), the stack that starts them, applies Terraform and runs
the functions (:mod:`.stack`, :mod:`.terraform`), the Lambda package
(:mod:`.lambda_package`), seeded sample data (:mod:`.samples`, :mod:`.generators`),
the end-to-end demo (:mod:`.demo`), and where the project's infrastructure and state
are found (:mod:`.project`). Importable without a source checkout: the deployables
come from the installed packages, the Terraform root module from the project folder.

May import everything in :mod:`mlaas4hep`; nothing there imports it.
"""
