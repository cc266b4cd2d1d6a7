"""The simulated bimanual ALOHA: MuJoCo physics on gym-aloha's ViperX assets, offscreen cameras,
a scripted teleoperator in the role of the leader arms."""
