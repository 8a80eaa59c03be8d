using System.Runtime.InteropServices;

namespace OrtFinetune.Training.Runtime;

/// <summary>
/// What a CUDA device can compute, read from the CUDA runtime that ORT's CUDA provider links
/// (libcudart.so.13, which a CUDA run must find through LD_LIBRARY_PATH anyway).
/// </summary>
public static class CudaCapability
{
    // cudaDeviceAttr: cudaDevAttrComputeCapabilityMajor, cudaDevAttrComputeCapabilityMinor.
    const int AttrMajor = 75, AttrMinor = 76;

    [DllImport("libcudart.so.13")]
    static extern int cudaDeviceGetAttribute(out int value, int attr, int device);

    /// <summary>The device's compute capability, or null where the CUDA runtime cannot be loaded or does not know the device.</summary>
    public static (int Major, int Minor)? Of(int device)
    {
        try
        {
            if (cudaDeviceGetAttribute(out int major, AttrMajor, device) != 0 || cudaDeviceGetAttribute(out int minor, AttrMinor, device) != 0) return null;
            return (major, minor);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or BadImageFormatException)
        {
            return null;
        }
    }

    /// <summary>Whether <paramref name="device"/> computes in bfloat16: a CUDA device of compute capability 8.0 (Ampere) or newer.</summary>
    public static bool HasBf16(DeviceSpec device) => device.IsCuda && Of(device.Index) is { Major: >= 8 };
}
