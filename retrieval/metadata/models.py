"""The database's tables: roots (indexed folders), contents (one per distinct image, owning one vector),
files (paths pointing at a content), failures (files that could not be read) and the manifest."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from retrieval.metadata.reader import DB_NAME

__all__ = ["DB_NAME", "Base", "Content", "Failure", "File", "Manifest", "Root", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Manifest(Base):
    __tablename__ = "manifest"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Root(Base):
    __tablename__ = "roots"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    added_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Content(Base):
    __tablename__ = "contents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    embedded: Mapped[bool] = mapped_column(Boolean, default=False)
    embedded_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    captured_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # What EXIF says (revision 0003; None where it says nothing, or until the file changes or
    # `ingest --refresh-metadata` reads it again).
    camera_make: Mapped[str | None] = mapped_column(Text, nullable=True)
    camera_model: Mapped[str | None] = mapped_column(Text, nullable=True)
    lens: Mapped[str | None] = mapped_column(Text, nullable=True)
    gps_lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    gps_lon: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        Index("ix_contents_captured_at", "captured_at"),
        Index("ix_contents_format", "format"),
        Index("ix_contents_width", "width"),
        Index("ix_contents_height", "height"),
        Index("ix_contents_gps", "gps_lat", "gps_lon"),
    )


class File(Base):
    __tablename__ = "files"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text, unique=True)
    content_id: Mapped[int] = mapped_column(ForeignKey("contents.id"))
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    #: The folder holding the file, relative to its indexed root ("" at the top; "/"-separated), for
    #: `--in FOLDER` prefix filters (revision 0003).
    folder: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        Index("ix_files_folder", "folder"),
        Index("ix_files_mtime_ns", "mtime_ns"),
    )


class Failure(Base):
    __tablename__ = "failures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text, unique=True)
    reason: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    failed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
