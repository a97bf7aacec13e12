"""Serving a policy to robots: a websocket + msgpack ``PolicyServer``, and on the robot a ``PolicyClient``
and an ``AsyncActionStream`` that keeps actions flowing while the next chunk is computed.

The robot's side (``protocol``, ``client``, ``stream``) needs only numpy, msgpack and websockets
(``pip install 'mode-policy[serve]'``); the server also needs the policy's own dependencies.
"""

from mode_policy.lazy import lazy_exports

_EXPORTS = {
    "AsyncActionStream": "mode_policy.serving.stream",
    "PolicyClient": "mode_policy.serving.client",
    "PolicyServer": "mode_policy.serving.server",
    "ServerError": "mode_policy.serving.client",
    "ServerUnavailable": "mode_policy.serving.client",
    "evaluate_served": "mode_policy.serving.evaluate",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(globals(), _EXPORTS)
