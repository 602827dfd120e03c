"""Reading: where ROOT files and documents live, and opening the trees they hold.

One module per location scheme behind one small interface, as uproot's ``source/*.py``
(:mod:`.location` defines :class:`~.location.Location` and picks one by URL;
:mod:`.local`, :mod:`.s3`, :mod:`.xrootd`, :mod:`.https` implement it). On top of them:
opening the TTree or RNTuple of a file and classifying its branches (:mod:`.tree`
behind one :class:`~.event_source.EventSource`, :mod:`.ttree`, :mod:`.rntuple`,
:mod:`.branches`, and :mod:`.leaves`: the one rule that names and reads fixed-size
arrays and members as flat and jagged columns), the
content identity of a file (:mod:`.identity`), turning paths, directories, globs and
prefixes into file URLs (:mod:`.expand`), small documents (:mod:`.documents`), the
inflate library for ZLIB baskets (:mod:`.codec`), one name-matching rule
(:mod:`.names`), transport failures as :class:`~mlaas4hep.errors.ReadError`
(:mod:`.failures`), the columns of a chunk as numpy offsets and content
(:mod:`.columns`), which specs, transforms and the service all read, and AWS clients
with botocore's error codes read once (:mod:`.aws`), which the pipeline and the shared
model registry both use.

May import: :mod:`mlaas4hep.errors` and :mod:`mlaas4hep.extras` only.
"""
