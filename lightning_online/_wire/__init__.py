"""Every wire format of the package, in one place.

* ``samples``: the typed sample record (a fixed header, then raw arrays) that solver runs send
  over MPI, that the receiver writes into shared slots, and the end-of-run record;
* ``tcp``: the framing external programs speak over TCP (``lightning_online.h`` mirrors it, and
  a test holds the C header against these constants);
* ``frames``: the pipe frames between a worker and its sandbox, and the length-prefixed JSON
  frames between a rank and its launch helper.

Pure functions over bytes and numpy arrays: no sockets, no MPI, no threads. Code here runs in
whichever process encodes or decodes (solver sandboxes, workers, the receiver thread, the
external client).
"""
