"""The demo: a real deployment on loopback, started, watched and stopped by one command.

``demo.run`` starts a coordinator and edge agents as processes of their own and reports on
them; ``demo.cli`` adds it to the ``fedadamw`` command as ``fedadamw demo``. It lives outside
``fedadamw`` because it runs the services, while ``fedadamw`` holds only the algorithm.
"""
