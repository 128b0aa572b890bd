"""Running on a Ray cluster: Ray Jobs submission (``jobs``) and the nodes' secrets file that a
submitted job's workers load first (``node_secrets``; its ``WORKER_SETUP_HOOK`` is the dotted
path the job's runtime environment names). Importing the package imports neither (nor Ray).
"""
