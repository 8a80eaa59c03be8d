using OrtFinetune.Abstractions;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats.Gif;
using SixLabors.ImageSharp.Memory;
using SixLabors.ImageSharp.Metadata;
using SixLabors.ImageSharp.PixelFormats;

namespace OrtFinetune.Plugins.Datasets;

/// <summary>
/// Decodes image files with ImageSharp under limits: file size, pixel count (checked from the header with
/// Image.Identify before any decoding), the allocator's per-buffer limit, first frame only for GIFs.
/// Every failure is a DatasetException naming the file.
/// </summary>
public sealed class ImageDecoding
{
    public const long DefaultMaxPixels = 40_000_000;
    public const long DefaultMaxFileBytes = 256L << 20;

    private readonly Configuration _config;

    public ImageDecoding(long maxPixels = DefaultMaxPixels, long maxFileBytes = DefaultMaxFileBytes)
    {
        if (maxPixels < 1) throw new ArgumentOutOfRangeException(nameof(maxPixels));
        MaxPixels = maxPixels; MaxFileBytes = maxFileBytes;
        _config = Configuration.Default.Clone();
        // Largest buffer a decode within the pixel limit needs: RGBA32 (4 bytes/pixel) plus headroom.
        int limitMb = (int)Math.Clamp(maxPixels * 8 / (1 << 20) + 16, 32, 4096);
        _config.MemoryAllocator = MemoryAllocator.Create(new MemoryAllocatorOptions { AllocationLimitMegabytes = limitMb, MaximumPoolSizeMegabytes = 64 });
        _config.ImageFormatsManager.SetDecoder(SixLabors.ImageSharp.Formats.Gif.GifFormat.Instance, new GifDecoder { DecodingMode = FrameDecodingMode.First });
        _config.MaxDegreeOfParallelism = 1; // the data loader parallelizes across images
    }

    public long MaxPixels { get; }
    public long MaxFileBytes { get; }

    private byte[] ReadBytes(string path)
    {
        try
        {
            using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 14);
            long len = fs.Length;
            if (len == 0) throw new DatasetException($"{path}: image file is empty (0 bytes)");
            if (len > MaxFileBytes) throw new DatasetException($"{path}: image file is {len} bytes, over the {MaxFileBytes}-byte limit");
            var buf = new byte[len];
            int got = 0;
            while (got < len) { int n = fs.Read(buf, got, (int)len - got); if (n == 0) break; got += n; }
            if (got < len) throw new DatasetException($"{path}: truncated while reading");
            return buf;
        }
        catch (DatasetException) { throw; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DatasetException($"{path}: cannot read ({e.Message})", e);
        }
    }

    /// <summary>Reads the header only; returns the size or throws a DatasetException (unknown format, corrupt header, too large).</summary>
    public (int Width, int Height) Identify(string path) => IdentifyBytes(path, ReadHeaderBytes(path));

    private byte[] ReadHeaderBytes(string path)
    {
        // Identification needs only the start of most files, but JPEG headers may sit after large metadata; read it all (bounded).
        return ReadBytes(path);
    }

    private (int Width, int Height) IdentifyBytes(string path, byte[] bytes)
    {
        IImageInfo? info;
        try { info = Image.Identify(_config, bytes, out _); }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new DatasetException($"{path}: not a readable image ({e.GetType().Name}: {e.Message})", e);
        }
        if (info is null) throw new DatasetException($"{path}: unsupported or unrecognized image format");
        if (info.Width <= 0 || info.Height <= 0) throw new DatasetException($"{path}: image declares an empty size {info.Width}x{info.Height}");
        long pixels = (long)info.Width * info.Height;
        if (pixels > MaxPixels)
            throw new DatasetException($"{path}: image declares {info.Width}x{info.Height} = {pixels} pixels, over the limit of {MaxPixels}; refused before decoding");
        return (info.Width, info.Height);
    }

    /// <summary>Decodes to RGB24 (3 channels, HWC).</summary>
    public ImageSample Decode(string path, int label)
    {
        var bytes = ReadBytes(path);
        var (w, h) = IdentifyBytes(path, bytes);
        try
        {
            using var img = Image.Load<Rgb24>(_config, bytes);
            if (img.Width != w || img.Height != h)
                throw new DatasetException($"{path}: decoded size {img.Width}x{img.Height} differs from the header's {w}x{h}");
            var px = new byte[checked(img.Width * img.Height * 3)];
            img.CopyPixelDataTo(px);
            return new ImageSample { Width = img.Width, Height = img.Height, Channels = 3, Pixels = px, Label = label, Source = path };
        }
        catch (DatasetException) { throw; }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new DatasetException($"{path}: cannot decode image ({e.GetType().Name}: {e.Message})", e);
        }
    }
}
