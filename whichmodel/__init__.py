"""whichmodel's base layer: what every other package shares and nothing else.

``whichmodel.registry`` (one registry style for proxies, strategies, architectures and tasks),
``whichmodel.files`` (one atomic write) and ``whichmodel.uri`` (one URI redactor). The packages
above it -- ``lightning_modules`` (what trains), ``selection`` (what is decided), ``sweeps``
(where and how it runs) and ``mlflow_server`` -- import from here; this package imports none of
them.
"""
