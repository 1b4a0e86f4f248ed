"""Finding photo files and decoding them safely.

Discovery walks folders and hashes content; decoding turns untrusted bytes into bounded RGB pixels;
thumbnails keeps the small JPEGs that ingest makes from those pixels and maps and the web page show.
"""
