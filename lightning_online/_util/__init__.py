"""Small shared helpers of the package's parts: argument checks (``checks``), seeds (``seeds``),
the package's own gloo group (``dist``), the MPI process environment (``mpienv``) and the capture
of a module's per-sample predictions (``capture``).

Nothing here knows the study, the transport or Lightning's loops; everything above may use it.
"""
