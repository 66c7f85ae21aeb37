"""The only package that imports flwr: ServerApp, ClientApp and the simulation launcher."""
