using System.Buffers.Binary;
using System.IO.Compression;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Datasets;

/// <summary>
/// Reads IDX files (MNIST's format): a 4-byte magic (0, 0, type, rank), rank big-endian 32-bit dimensions,
/// then the data. Only unsigned bytes (type 0x08) are supported. Files may be gzip-compressed (detected by magic).
/// Sizes are validated before allocation: against the file length for raw files; for gzip files the
/// decompressed data is read in chunks and never beyond the size the header implies.
/// </summary>
public static class IdxReader
{
    public sealed record IdxData(int[] Dims, byte[] Data, int HeaderLength);

    /// <summary>Largest payload accepted (bytes); a byte[] cannot hold more anyway.</summary>
    public const long MaxPayload = 0x7FFFFFC7 - 64;

    public static IdxData Read(string path, int expectedRank)
    {
        if (!File.Exists(path)) throw new DatasetException($"{path}: file not found");
        try
        {
            using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            long fileLength = fs.Length;
            int b0 = fs.ReadByte(), b1 = fs.ReadByte();
            fs.Position = 0;
            bool gzip = b0 == 0x1F && b1 == 0x8B;
            if (gzip)
            {
                using var gz = new GZipStream(fs, CompressionMode.Decompress);
                return ReadStream(path, gz, expectedRank, rawLength: null);
            }
            return ReadStream(path, fs, expectedRank, rawLength: fileLength);
        }
        catch (DatasetException) { throw; }
        catch (InvalidDataException e) { throw new DatasetException($"{path}: corrupt gzip data ({e.Message})", e); }
        catch (IOException e) { throw new DatasetException($"{path}: read error ({e.Message})", e); }
        catch (UnauthorizedAccessException e) { throw new DatasetException($"{path}: access denied ({e.Message})", e); }
    }

    private static IdxData ReadStream(string path, Stream s, int expectedRank, long? rawLength)
    {
        Span<byte> magic = stackalloc byte[4];
        if (ReadFully(s, magic) < 4) throw new DatasetException($"{path}: truncated: file is shorter than the 4-byte IDX magic");
        if (magic[0] != 0 || magic[1] != 0)
            throw new DatasetException($"{path}: not an IDX file (magic {Convert.ToHexString(magic)}, expected 0000{0x08:X2}{expectedRank:X2})");
        if (magic[2] != 0x08)
            throw new DatasetException($"{path}: unsupported IDX element type 0x{magic[2]:X2} (only unsigned bytes, 0x08, are supported)");
        if (magic[3] != expectedRank)
            throw new DatasetException($"{path}: IDX rank {magic[3]} where {expectedRank} was expected (magic {Convert.ToHexString(magic)})");
        int rank = magic[3];
        var dimBytes = new byte[4 * rank];
        if (ReadFully(s, dimBytes) < dimBytes.Length) throw new DatasetException($"{path}: truncated: header ends inside the dimension list");
        var dims = new int[rank];
        long total = 1;
        for (int i = 0; i < rank; i++)
        {
            uint d = BinaryPrimitives.ReadUInt32BigEndian(dimBytes.AsSpan(4 * i));
            if (d > int.MaxValue) throw new DatasetException($"{path}: dimension {i} is {d}, too large");
            dims[i] = (int)d;
            total *= d;
            if (total > MaxPayload) throw new DatasetException($"{path}: header declares {string.Join("x", dims[..(i + 1)])}... elements, more than the {MaxPayload} bytes supported");
        }
        int header = 4 + 4 * rank;
        if (rawLength is long len)
        {
            long actual = len - header;
            if (actual < total) throw new DatasetException($"{path}: truncated: header declares {string.Join("x", dims)} = {total} bytes of data, file has {actual}");
            if (actual > total) throw new DatasetException($"{path}: {actual - total} unexpected bytes after the {total} bytes of data that the header ({string.Join("x", dims)}) declares");
            var data = new byte[total];
            if (ReadFully(s, data) < total) throw new DatasetException($"{path}: truncated while reading");
            return new IdxData(dims, data, header);
        }
        else
        {
            // Compressed: the real size is unknown until read; grow the buffer with what actually arrives.
            byte[] data = new byte[(int)Math.Min(total, 1 << 20)];
            long got = 0;
            while (got < total)
            {
                if (got == data.Length)
                {
                    long next = Math.Min(total, Math.Max(data.Length * 2L, 1 << 20));
                    Array.Resize(ref data, (int)next);
                }
                int n = s.Read(data, (int)got, (int)Math.Min(data.Length - got, 1 << 20));
                if (n == 0) throw new DatasetException($"{path}: truncated: header declares {string.Join("x", dims)} = {total} bytes of data, decompressed file has {got}");
                got += n;
            }
            Span<byte> probe = stackalloc byte[1];
            if (s.Read(probe) > 0) throw new DatasetException($"{path}: unexpected data after the {total} bytes that the header ({string.Join("x", dims)}) declares");
            return new IdxData(dims, data, header);
        }
    }

    private static int ReadFully(Stream s, Span<byte> buf)
    {
        int got = 0;
        while (got < buf.Length)
        {
            int n = s.Read(buf[got..]);
            if (n == 0) break;
            got += n;
        }
        return got;
    }

    private static long ReadFully(Stream s, byte[] buf)
    {
        long got = 0;
        while (got < buf.Length)
        {
            int n = s.Read(buf, (int)got, (int)Math.Min(buf.Length - got, 1 << 20));
            if (n == 0) break;
            got += n;
        }
        return got;
    }
}
