"""The sandbox host: a simulated GPU node on loopback for demos, tests and users' CI."""
