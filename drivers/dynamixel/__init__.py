"""Dynamixel arms on dynamixel-sdk (Protocol 2.0), and the bus emulator the tests and `aloha-emulated` use.

    protocol     Protocol 2.0 framing, CRC, stuffing; status and hardware errors as sentences
    tables       X-series control tables and models
    bus          one chain on one port: motor check, registers, sync/bulk read, sync write, time budgets
    config       `ArmConfig`: one chain in config.yaml (robot.arms.NAME)
    calibration  ticks <-> radians and gripper fraction, the versioned file, the `xr0 calibrate` steps
    arm          `DynamixelArm` (the `Arm` contract): connect/configure, read, write, hardware errors
    group        `ReadGroup`: every chain read at once, one thread per port
    aloha        the four chains of an ALOHA from `robot.arms`, real or emulated
    servo        one emulated servo: control table and access rules
    emulator     `BusEmulator`: a virtual chain on a pty, with fault injection
    emulated     emulated ViperX / WidowX arms: hidden assembly, scripted leaders, scripted operator
    twin         camera images for `aloha-emulated`: the simulator showing the emulated followers

Nothing here is imported by `drivers/__init__`; dynamixel-sdk is imported when a bus is first opened.
"""
