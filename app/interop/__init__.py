"""The world outside: the Hugging Face Hub (`hub`) and the isolated LeRobot environment (`lerobot_env`)."""
