"""Transports beyond the in-process one (zofed.transport.InProc): each module has `open(cfg) -> Transport`.

    torchdist        torch.distributed on P processes of one machine (gloo / NCCL), started by rank 0
    flower           a Flower deployment: flower_server (the ServerApp, no torch), flower_client (the
                     ClientApp), and the launcher of a SuperLink and SuperNodes on loopback
    children         the child processes a transport starts and stops
"""
