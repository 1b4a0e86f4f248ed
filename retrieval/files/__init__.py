"""Finding photo files and decoding them safely.

Discovery walks folders and hashes content; decoding turns untrusted bytes into bounded RGB pixels.
"""
