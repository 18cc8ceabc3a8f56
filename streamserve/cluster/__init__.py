"""Scale-out on Ray: nodes run whole streamserve servers as actors, a director places sessions.

* :mod:`.node` -- `NodeServer`, a Ray actor serving the full HTTP/WebRTC surface of one machine
  (its engines, one per device) on the node's own address; media terminates there;
* :mod:`.director` -- `Director`, a Ray actor that tracks every node's load and picks the node with the
  most headroom (`streamserve.schedulers.placement`), finds a stream's node, and drains nodes;
* :mod:`.front` -- the HTTP front: WHIP/WHEP/offer ``POST`` -> ``307`` to the chosen node, JSON routes
  for WebSocket clients, drain and node listing;
* :mod:`.launch` -- ``streamserve serve --ray ADDRESS``: connect, start the actors, serve the front.

Ray is an optional extra: ``pip install 'streamserve[cluster]'``.
"""
