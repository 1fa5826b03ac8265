"""Asynchronous inference: a policy server and a robot client over a safe protocol.

- `smolvla.serving.protocol`: the wire format (openpi-compatible msgpack + numpy), strict decoder;
- `smolvla.serving.server`: `smolvla serve` (needs torch);
- `smolvla.serving.client`: the robot client, LeRobot's async semantics (numpy + websockets + msgpack);
- `smolvla.serving.robot`: the Robot / Camera interface and the Meta-World simulated robot;

Nothing is imported here, so `import smolvla.serving.client` stays free of torch.
"""
