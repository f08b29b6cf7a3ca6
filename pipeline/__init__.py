"""Offline preprocessing: videos -> HDF5 shards of 1.25x RetinaFace face crops with dlib 68-point landmarks.

Modules, one job each: ``manifest`` (the dataset manifest and its checks), ``listing`` (a manifest split's
videos), ``adhoc`` (videos from ``--input``), ``video`` (ffmpeg probing and frame sampling), ``faces``
(RetinaFace and crops), ``landmarks`` (dlib 68 points), ``extract`` (one video -> its crops), ``shards`` (the
HDF5 storage contract and its reader), ``shard_writer``, ``shard_codec`` and ``shard_index`` (writing shards,
their compressions, a split's index), ``tasks`` (the worker task bodies), ``runner`` (Dask scheduling of the
tasks), ``progress`` (the progress bar), ``packing`` (staged videos into shards, failures log, index),
``resume``, ``lock``, ``cluster`` (which Dask cluster, checks of its workers), ``verify`` and
``inspect_shards`` (checks and summaries), ``cli`` (``python -m pipeline``). Nothing is imported here, so
``import pipeline.shards`` stays light.
"""
