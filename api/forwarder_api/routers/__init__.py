"""One APIRouter per resource; ``forwarder_api.main`` includes them all."""
