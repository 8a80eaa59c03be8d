using OrtFinetune.Abstractions;

namespace OrtFinetune.Training.Data;

/// <summary>A source region (in source pixels) that is resampled to the output size.</summary>
/// <param name="Left">Left edge of the region in the (possibly resized) image.</param>
/// <param name="Top">Top edge of the region.</param>
/// <param name="Width">Region width.</param>
/// <param name="Height">Region height.</param>
public readonly record struct CropBox(int Left, int Top, int Width, int Height);

/// <summary>
/// The geometry and pixel operations behind <see cref="TransformPipeline"/>, with torchvision's semantics
/// (bilinear, align_corners=False, no antialiasing).
/// </summary>
public static class Transforms
{
    /// <summary>torchvision's Resize(int): the shorter side becomes <paramref name="size"/>, the other keeps the aspect ratio.</summary>
    public static (int Width, int Height) ResizeShorterSide(int width, int height, int size)
    {
        if (width <= height) return (size, Math.Max(1, (int)((long)size * height / width)));
        return (Math.Max(1, (int)((long)size * width / height)), size);
    }

    /// <summary>torchvision's CenterCrop offsets: round((dim - crop) / 2); negative when the crop is larger (padding).</summary>
    public static CropBox CenterCrop(int width, int height, int cropWidth, int cropHeight) =>
        new((int)Math.Round((width - cropWidth) / 2.0, MidpointRounding.ToEven), (int)Math.Round((height - cropHeight) / 2.0, MidpointRounding.ToEven), cropWidth, cropHeight);

    /// <summary>
    /// torchvision's RandomResizedCrop.get_params: up to 10 tries of a random area fraction in <paramref name="scale"/>
    /// and a log-uniform aspect ratio in <paramref name="ratio"/>; else a center crop at the nearest allowed ratio.
    /// </summary>
    public static CropBox RandomResizedCrop(int width, int height, ref SplitMix64 rng,
        (double Min, double Max) scale, (double Min, double Max) ratio)
    {
        double area = (double)width * height;
        double logLo = Math.Log(ratio.Min), logHi = Math.Log(ratio.Max);
        for (int attempt = 0; attempt < 10; attempt++)
        {
            double targetArea = area * rng.Uniform(scale.Min, scale.Max);
            double aspect = Math.Exp(rng.Uniform(logLo, logHi));
            int w = (int)Math.Round(Math.Sqrt(targetArea * aspect), MidpointRounding.ToEven);
            int h = (int)Math.Round(Math.Sqrt(targetArea / aspect), MidpointRounding.ToEven);
            if (w > 0 && w <= width && h > 0 && h <= height)
            {
                int top = rng.Next(0, height - h + 1);
                int left = rng.Next(0, width - w + 1);
                return new CropBox(left, top, w, h);
            }
        }
        // Fallback: central crop.
        double inRatio = (double)width / height;
        int cw, ch;
        if (inRatio < ratio.Min) { cw = width; ch = (int)Math.Round(cw / ratio.Min, MidpointRounding.ToEven); }
        else if (inRatio > ratio.Max) { ch = height; cw = (int)Math.Round(ch * ratio.Max, MidpointRounding.ToEven); }
        else { cw = width; ch = height; }
        return new CropBox((width - cw) / 2, (height - ch) / 2, cw, ch);
    }

    /// <summary>Per output index along one axis: two source taps and the weight of the second; -1 taps mean padding (value 0).</summary>
    public struct AxisMap
    {
        public int[] I0, I1;
        public float[] W1;

        /// <summary>
        /// Resize the source axis to <paramref name="resized"/> pixels, then take outSize pixels starting at
        /// <paramref name="offset"/> (torchvision Resize + CenterCrop, or a padded RandomCrop when resized == srcSize).
        /// Outputs outside the resized image are padding.
        /// </summary>
        public static AxisMap ResizeThenCrop(int srcSize, int resized, int offset, int outSize, bool flip)
        {
            var m = New(outSize);
            double k = (double)srcSize / resized;
            for (int d = 0; d < outSize; d++)
            {
                int r = offset + (flip ? outSize - 1 - d : d);
                if (r < 0 || r >= resized) { m.I0[d] = m.I1[d] = -1; continue; }
                m.Set(d, (r + 0.5) * k - 0.5, 0, srcSize - 1);
            }
            return m;
        }

        /// <summary>Crop [offset, offset + window) of the source axis, then resize it to outSize (torchvision resized_crop).</summary>
        public static AxisMap CropThenResize(int srcSize, int offset, int window, int outSize, bool flip)
        {
            if (offset < 0 || window < 1 || offset + window > srcSize) throw new ArgumentOutOfRangeException(nameof(window), $"crop [{offset}, {offset + window}) outside an axis of {srcSize}");
            var m = New(outSize);
            double k = (double)window / outSize;
            for (int d = 0; d < outSize; d++)
            {
                int o = flip ? outSize - 1 - d : d;
                m.Set(d, offset + (o + 0.5) * k - 0.5, offset, offset + window - 1);
            }
            return m;
        }

        private static AxisMap New(int n) => new() { I0 = new int[n], I1 = new int[n], W1 = new float[n] };

        private void Set(int d, double src, int lo, int hi)
        {
            if (src < lo) src = lo;
            if (src > hi) src = hi;
            int i0 = (int)Math.Floor(src);
            I0[d] = i0; I1[d] = Math.Min(i0 + 1, hi); W1[d] = (float)(src - i0);
        }
    }

    /// <summary>
    /// Bilinear resampling of an HWC byte image into a CHW float destination, with channel conversion
    /// (1 -> 3 replicates, 3 -> 1 uses ITU-R 601 luma like torchvision's Grayscale), scaling to [0, 1] and
    /// (x - mean) / std per output channel.
    /// </summary>
    public static void Resample(ImageSample s, in AxisMap xs, in AxisMap ys, int outC, ReadOnlySpan<float> mean,
        ReadOnlySpan<float> std, Span<float> dest)
    {
        int outW = xs.I0.Length, outH = ys.I0.Length, plane = outW * outH;
        int inC = s.Channels, W = s.Width;
        var px = s.Pixels;
        Span<float> scale = stackalloc float[outC];
        Span<float> bias = stackalloc float[outC];
        for (int c = 0; c < outC; c++) { scale[c] = 1f / (255f * std[c]); bias[c] = -mean[c] / std[c]; }
        Span<float> v = stackalloc float[3];
        for (int oy = 0; oy < outH; oy++)
        {
            int y0 = ys.I0[oy], y1 = ys.I1[oy];
            float wy = ys.W1[oy];
            for (int ox = 0; ox < outW; ox++)
            {
                int x0 = xs.I0[ox], x1 = xs.I1[ox];
                int o = oy * outW + ox;
                if (y0 < 0 || x0 < 0)
                {
                    for (int c = 0; c < outC; c++) dest[c * plane + o] = bias[c];
                    continue;
                }
                float wx = xs.W1[ox];
                int r0 = y0 * W, r1 = y1 * W;
                for (int c = 0; c < inC; c++)
                {
                    float a = px[(r0 + x0) * inC + c], b = px[(r0 + x1) * inC + c];
                    float cc = px[(r1 + x0) * inC + c], d = px[(r1 + x1) * inC + c];
                    float top = a + (b - a) * wx, bot = cc + (d - cc) * wx;
                    v[c] = top + (bot - top) * wy;
                }
                if (inC == outC) for (int c = 0; c < outC; c++) dest[c * plane + o] = v[c] * scale[c] + bias[c];
                else if (inC == 1) for (int c = 0; c < outC; c++) dest[c * plane + o] = v[0] * scale[c] + bias[c];
                else dest[o] = (0.299f * v[0] + 0.587f * v[1] + 0.114f * v[2]) * scale[0] + bias[0];
            }
        }
    }
}
