"""The fleet gateway: devices check in, learn their assigned model, download it and report its health."""
