"""The training layer: the parameter server's loop (loop.py), evaluation on the server
(evaluation.py), what a run writes and says (records.py) and its folder (runfolder/:
the lock, resume, checkpoints). It imports the layers below it (server, config, compute),
never an engine or a front end: an engine hands the loop its copies (loop.Engine).
"""
