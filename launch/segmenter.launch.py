"""Start the ovseg segmenter as a ROS 2 node.

    ros2 launch launch/segmenter.launch.py [profile:=vehicle] [camera_ns:=/front_camera]
    ros2 launch launch/segmenter.launch.py --show-args

ovseg is a plain binary on pure-Rust DDS, not an ament package, so it is started with
ExecuteProcess rather than launch_ros' Node. segmenter.launch.xml next to this file does
the same.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, ThisLaunchFileDir


def generate_launch_description():
    here = ThisLaunchFileDir()
    camera_ns = LaunchConfiguration('camera_ns')
    profiles_file = LaunchConfiguration('fastdds_profile')

    return LaunchDescription([
        DeclareLaunchArgument(
            'profile', default_value='field_robot', choices=['field_robot', 'vehicle'],
            description='Parameter profile: <profile>.yaml next to this file.'),
        DeclareLaunchArgument(
            'params_file', default_value=[here, '/', LaunchConfiguration('profile'), '.yaml'],
            description='Parameters file; overrides profile.'),
        DeclareLaunchArgument(
            'ovseg', default_value='ovseg',
            description='The ovseg binary: a path, or a name looked up on PATH.'),
        DeclareLaunchArgument(
            'camera_ns', default_value='/camera',
            description='Camera namespace, no trailing slash: inputs are <camera_ns>/image_raw, '
                        '<camera_ns>/camera_info, <camera_ns>/depth_registered/image_rect, and for '
                        'depth_registration extrinsics <camera_ns>/depth/image_rect_raw with '
                        '<camera_ns>/depth/camera_info.'),
        DeclareLaunchArgument('node_name', default_value='segmenter', description='Node name.'),
        DeclareLaunchArgument(
            'fastdds_profile', default_value=[here, '/fastdds_large_buffers.xml'],
            description='Fast DDS XML profile given to rclpy/rclcpp processes of this launch.'),
        DeclareLaunchArgument(
            'domain_id', default_value=EnvironmentVariable('ROS_DOMAIN_ID', default_value='0'),
            description='ROS_DOMAIN_ID (default: the inherited one, else 0).'),

        SetEnvironmentVariable('ROS_DOMAIN_ID', LaunchConfiguration('domain_id')),
        # ovseg (RustDDS) ignores these. They are for rclpy/rclcpp processes started in the
        # same launch (e.g. when this file is included next to a viewer): with rmw_fastrtps'
        # default socket buffers those lose ovseg's large frames (see README.md). Fast DDS 2.x
        # (Jazzy) reads FASTRTPS_DEFAULT_PROFILES_FILE, Fast DDS 3.x FASTDDS_DEFAULT_PROFILES_FILE.
        SetEnvironmentVariable('FASTRTPS_DEFAULT_PROFILES_FILE', profiles_file),
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', profiles_file),

        ExecuteProcess(
            cmd=[
                LaunchConfiguration('ovseg'), 'node', '--ros-args',
                '-r', ['__node:=', LaunchConfiguration('node_name')],
                '-r', ['image:=', camera_ns, '/image_raw'],
                '-r', ['camera_info:=', camera_ns, '/camera_info'],
                '-r', ['depth_registered:=', camera_ns, '/depth_registered/image_rect'],
                '-r', ['depth/image:=', camera_ns, '/depth/image_rect_raw'],
                '-r', ['depth/camera_info:=', camera_ns, '/depth/camera_info'],
                '--params-file', LaunchConfiguration('params_file'),
            ],
            name=LaunchConfiguration('node_name'),
            output='screen',
        ),
    ])
