"""Asynchronous inference: a policy server and a robot client over a safe protocol.

- `smolvla.serving.protocol`: the wire format (openpi-compatible msgpack + numpy), strict decoder;
- `smolvla.serving.server`: `smolvla serve` (needs torch);
- `smolvla.serving.client`: the robot client, LeRobot's async semantics (numpy + websockets + msgpack);
- `smolvla.serving.robot`: the robot interface (LeRobot's `Robot` API) and the Meta-World simulated robot;
- `smolvla.serving.mapping`: robot features <-> the policy's inputs and outputs, checked before moving;
- `smolvla.serving.safety`: the step and joint limits on every action;
- `smolvla.serving.session`: `RobotSession`, episodes on a robot with the limits, deadlines,
  reconnects, clean stops and the rollout recorded (what `smolvla robot-client` runs);

Nothing is imported here, so `import smolvla.serving.client` stays free of torch.
"""
