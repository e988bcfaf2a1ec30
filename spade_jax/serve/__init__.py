"""The painter web app (GauGAN in the browser): paint a label map, see the synthesis, choose a style.

  python -m spade_jax.serve --checkpoint=runs/demo            # then open http://127.0.0.1:8000

A stdlib HTTP server (`server.PainterServer`) serves a static page and a small JSON API; a worker thread batches
concurrent synthesis requests into fixed-size generator calls. See the README section "Interactive painter".
"""

__all__ = ["PainterServer", "BadRequest"]


def __getattr__(name):
  if name in __all__:
    from spade_jax.serve import server
    return getattr(server, name)
  raise AttributeError(f"module 'spade_jax.serve' has no attribute {name!r}")
