"""Maps: t-SNE layouts of a result's neighbourhood, drawn as a picture or a page, with cached thumbnails.

`layout` computes positions and clusters, `render` draws them with the thumbnails that
`retrieval.files.thumbnails` keeps.
"""
