"""The policy over the network: wire format (numpy + msgpack, never pickle), the WebSocket server and the
client. Importable without torch, so a robot PC can drive a policy served from a GPU box.
"""
