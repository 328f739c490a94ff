"""Server identity, shared by the OpenAPI document and the v2 server metadata."""

SERVER_NAME = "segserve"
VERSION = "0.1.0"
